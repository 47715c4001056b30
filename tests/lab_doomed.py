"""A worker module that ends its process as it is imported: a worker that dies at every start."""

import os

print("lab_doomed: starting", flush=True)  # one line in its log per start
os._exit(4)
