"""Is a compact model what the masked one computed? ``check_model`` with its float64 rerun
(``precision``) and the replay of discrete decisions (``replay``)."""
