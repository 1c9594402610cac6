"""Domain types: money, ids, the milestone model and its state machine, events and errors."""
