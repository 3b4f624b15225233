"""The benchmark harness behind `xenmux bench`."""
