"""wflogs: Slack alerts, search and daily digests for Dify workflow runs."""
