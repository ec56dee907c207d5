"""The pruning report: reading a run's logs and specs (``data``) and writing its page and plots
(``render``)."""
