"""The parts of `benchmarks/compare_reference.py`, the side-by-side script, one file each:
measuring a command (`measure`), the installed environments' sizes (`env_size`), comparing two
predictions files (`agreement`) and the table with the issue's targets (`table`).
`compare_reference` re-exports what tests and `gpu_device.py` import from it."""
