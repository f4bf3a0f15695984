"""Getting migration messages between coordinators.

``codec``: the msgpack wire format of the protocol's messages and errors.
``zmq``: request/reply over ZeroMQ with CURVE (the only module that imports
zmq; importing this package does not).
"""
