"""Monitoring services of a run: InfluxDB, Telegraf and Grafana configuration and definitions."""
