"""`ftc sweep`: hyperparameter search over recipe keys with Optuna.

`space` reads and checks SPACE.yaml against the recipe, `study` drives the trials (each a
normal `ftc train` run dir, pruned from its metrics.jsonl as it grows) and `report`
writes the leaderboard, the best trial's recipe and the sweep report. Optuna is the
optional `sweep` extra; nothing here imports it at module level.
"""
