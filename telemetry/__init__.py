"""What an operator watches: Prometheus metrics and logs as JSON lines. Light enough for every
process to import (no torch, no CLI)."""
