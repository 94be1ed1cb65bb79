"""HTTP plumbing with no domain in it: error bodies, body-size limit, byte ranges, the
session-releasing route class, pagination. Imports nothing else of ``api``."""
