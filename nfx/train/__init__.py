"""Training: AGC math (torch only), fastai callbacks, learner wiring and the fit sequence."""
