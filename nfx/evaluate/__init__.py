"""Evaluation: metrics (numpy/sklearn), patient bootstrap, report rendering."""
