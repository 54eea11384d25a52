"""Services: the business rules. They take a unit of work (and a cache); no Flask, no SQL."""
