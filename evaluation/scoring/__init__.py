"""The parts of the scorer (`evaluation.score`), one concern each: options, pycocotools'
summaries, matching, coverage, recall per bucket, bootstrap intervals, curves, the table."""
