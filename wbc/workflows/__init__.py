"""One module per command's logic (train, evaluate, predict, count, explain, export, report, cv,
tune) and the local/Ray executors they share. Never imports click: the CLI does."""
