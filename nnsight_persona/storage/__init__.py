"""Result files and their bookkeeping: netCDF datasets (atomic, resumable), output policy and locks,
provenance, manifests, several models along `model`, the model cache, and generated doc blocks."""
