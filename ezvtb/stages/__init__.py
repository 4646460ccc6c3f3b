"""Runtime stages chained by the core: THA -> output cache -> RIFE -> super-resolution.

Stages use `Session`s only (never torch, never a backend directly).
"""
