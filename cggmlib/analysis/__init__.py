"""Reading trained runs: statistics (`stats`), tables and figures (`tables`, `figures`), gradient
directions (`gradients`), the audit of the released code (`audit`), strategy comparisons (`compare`)
and dataset views (`dataview`)."""
