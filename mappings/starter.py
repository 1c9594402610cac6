"""The starter config `milestone-sync init` writes: runs at once on the built-in sandbox."""

STARTER_CONFIG = """\
# milestone-sync mapping config. Check it with `milestone-sync check`, try it with
# `milestone-sync plan`. See config.example.toml in the project for every option.

[firm]
id = "my-firm"                 # a short id for this firm (used in idempotency keys)
name = "My Firm CPAs"
currency = "USD"               # ISO 4217; amounts are exact decimals in this currency

# The built-in sandbox: work items come from sample-work.toml, the ledger and the payment
# gateway are local files in .milestone-sync/. Replace with karbon / quickbooks / stripe
# connections when those adapters are set up (secrets are named by environment variable).
[[sources]]
id = "karbon"
kind = "memory"
options = { work_file = "sample-work.toml" }

[ledger]
kind = "memory"

[payments]
kind = "memory"

[defaults]
terms = "Net 15"               # invoice terms; "Net N" also sets the due date

[collection]
default_mode = "auto_charge"   # auto_charge | invoice_only | approval_required
retry_days = [1, 3, 7]         # soft declines are retried this many days after each failure

# A tax return billed in three parts of the engagement's fee (from the practice system).
[[plans]]
id = "tax-return"
name = "Tax return"
match = { source = "karbon", work_type = "Tax Return" }
description = "{engagement} - {milestone}"

[[plans.milestones]]
id = "documents"
name = "Documents received"
trigger = { status = "In Progress", secondary = "Documents received" }
percent = 40

[[plans.milestones]]
id = "review"
name = "Review complete"
trigger = { status = "In Progress", secondary = "Review" }
percent = 40

[[plans.milestones]]
id = "filed"
name = "Return filed"
trigger = { status = "Completed" }
remainder = true               # whatever is left of the fee, so the parts sum exactly

# Monthly bookkeeping: one invoice per closed month.
[[plans]]
id = "monthly-close"
name = "Monthly bookkeeping"
match = { source = "karbon" }
recurring = "monthly"
fee = "450.00"
description = "Bookkeeping {period} - {client}"

[[plans.milestones]]
id = "close"
name = "Month closed"
trigger = { close_status = "Done" }
remainder = true
"""
