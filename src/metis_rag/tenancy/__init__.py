"""Tenants, API keys, roles, the audit log and per-tenant quotas."""
