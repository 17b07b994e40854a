"""Data loaders: tabular data for linear models (:mod:`.tabular`: svmlight, .npz, arrays,
synthetic) and image sets for torch networks (:mod:`.images`)."""
