"""The paper's experiments and the reports on runs: `alexnet-report` (report.py, and compare.py for
several runs), `alexnet-ablations` (ablations.py) and `alexnet-figures` (figures.py). They read run
folders and launch alexnet-train; the training loop never imports them."""
