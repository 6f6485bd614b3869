"""Test harness: starts the processes the integration tests need and walks the IdP's pages.

procs     free ports, a group of child processes (ready lines, logs, stop by PID)
idp       the OpenID Provider in tests/idp/ and a scripted user logging in and out
upstream  the echo upstream in tests/upstream/
"""
