"""Pure protocol logic: building probes and parsing replies, with no sockets and no clocks.

In the spirit of h11's sans-IO design every function here maps bytes to small values and back,
so all of it is tested by feeding bytes (see tests/test_wire*.py).
"""
