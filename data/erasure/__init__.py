"""Erasure of personal data: raw images past their retention (`anonlab retention`) or named in a
request (`anonlab erase`) are removed from every store that holds them or anything derived from
them, the erasure is verified by scanning the stores again, and an audit line that holds no
personal identifier records it (see `data.erasure.erase`)."""
