"""One module per verb that is a sequence of steps over other verbs (compare: a grid of finetune runs)."""
