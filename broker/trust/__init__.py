"""What lets the broker trust a message that crossed a lab PC: keys and signatures.

Lab PCs hold the Redis credentials, so anything in Redis may have been written
by one. What must not be forgeable there is signed: a registration by those
that write the record (producers, the gateway, beat), a report by the worker
that ran the job. Lab PCs hold public keys only, and their own worker key.
"""
