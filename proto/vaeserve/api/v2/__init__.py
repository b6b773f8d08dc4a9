"""Generated stubs of the Open Inference Protocol (package `inference`; do not edit; `make proto`).

Imported by the server only: the vaeserve client never loads them, so tritonclient's own `inference`
stubs can live in the same process as the vaeserve client.
"""
