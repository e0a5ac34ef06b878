"""Tests of came.CAME (the in-process fused optimizer) against the authors' came_pytorch."""
