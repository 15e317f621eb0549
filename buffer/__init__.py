"""Evidence storage: sealed segment format, crypto, hash chain, ring store with the
pre-record window, clips, audit log, recovery after power loss, verifier and exporter.

Never talks to the network (that is ``sync``'s room).
"""
