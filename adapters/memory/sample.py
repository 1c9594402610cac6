"""Sample work for the built-in sandbox: what `milestone-sync init` writes beside the config."""

SAMPLE_WORK = """\
# Sample work for the in-memory sandbox source (kind = "memory", options.work_file).
# Each work item is an engagement as a practice system would report it, with the phases it has
# completed so far. Edit it, then run `milestone-sync plan` to see what would be billed.

[[work_items]]
key = "WI-1001"
client = "CL-ACME"
client_name = "Acme Plumbing LLC"
ledger_customer_id = "58"          # the client's customer id in the ledger
title = "2026 Form 1120 - Acme Plumbing LLC"
work_type = "Tax Return"
fee = "3000.00"                     # fixed fee from the practice system
start_date = 2026-11-02
phases = [
  { status = "In Progress", secondary = "Documents received", at = 2026-11-05T15:00:00Z },
  { status = "In Progress", secondary = "Review", at = 2026-11-12T10:30:00Z },
]

[[work_items]]
key = "WI-1002"
client = "CL-BRIGHT"
client_name = "Bright Dental PC"
ledger_customer_id = "61"
title = "2026 Form 1065 - Bright Dental PC"
work_type = "Tax Return"
fee = "4200.00"
start_date = 2026-11-03
phases = [
  { status = "In Progress", secondary = "Documents received", at = 2026-11-06T09:00:00Z },
]

[[work_items]]
key = "WI-1003"
client = "CL-COVE"
client_name = "Cove Cafe"
title = "Payroll setup - Cove Cafe"   # no plan bills payroll work: shown as needing attention
work_type = "Payroll"
start_date = 2026-11-04
phases = [ { status = "Completed", at = 2026-11-09T16:00:00Z } ]

[[work_items]]
key = "CL-BRIGHT:2026-10"
kind = "recurring_close"
client = "CL-BRIGHT"
client_name = "Bright Dental PC"
ledger_customer_id = "61"
title = "October 2026 close"
period = "2026-10"
phases = [ { close_status = "Done", at = 2026-11-08T12:00:00Z } ]

# Saved payment methods in the sandbox gateway: behaviour is succeed | processing |
# requires_action | decline:<code> (e.g. decline:insufficient_funds, decline:stolen_card).
[[payment_methods]]
client = "CL-ACME"
kind = "card"
behaviour = "succeed"

[[payment_methods]]
client = "CL-BRIGHT"
kind = "us_bank_account"
behaviour = "succeed"
"""
