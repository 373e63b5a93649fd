"""Cloud emulators for local mode and tests: they verify what the real services verify.

Never part of the Lambda layer.
"""
