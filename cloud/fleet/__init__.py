"""The hub's side of the fleet it runs: commands to devices, the live feed, and the audit log of what operators did."""
