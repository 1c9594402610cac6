"""Typed identifiers for the things milestone-sync tracks."""

from typing import NewType

TenantId = NewType("TenantId", str)
"""One firm (one config file, one ledger company)."""
SourceId = NewType("SourceId", str)
"""A configured practice source, e.g. 'karbon' or 'keeper'."""
ClientKey = NewType("ClientKey", str)
"""A client's key in the practice source (Karbon ClientKey, Keeper client id)."""
WorkItemKey = NewType("WorkItemKey", str)
"""A work item (Karbon WorkItemKey) or a recurring close (client + period) in the source."""
PlanId = NewType("PlanId", str)
MilestoneDefId = NewType("MilestoneDefId", str)
MilestoneKey = NewType("MilestoneKey", str)
"""Natural key of a billable milestone: source:work_item:milestone_def[:period]."""
LedgerCustomerId = NewType("LedgerCustomerId", str)
LedgerInvoiceId = NewType("LedgerInvoiceId", str)
LedgerPaymentId = NewType("LedgerPaymentId", str)
GatewayCustomerId = NewType("GatewayCustomerId", str)
ChargeId = NewType("ChargeId", str)
IdempotencyKey = NewType("IdempotencyKey", str)
ConfigRevision = NewType("ConfigRevision", str)
