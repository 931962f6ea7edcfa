"""SMTP ingress: aiosmtpd frontend that delivers through the mailstore."""
