"""The server's certificate authority: X.509 and JWT signing keys, their rotation and journal."""
