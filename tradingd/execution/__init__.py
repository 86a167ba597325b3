"""Order execution: the order state machine, the ledger, pre-trade risk, the paper venue, the
executor actor, the strategy host and the operator's order desk."""
