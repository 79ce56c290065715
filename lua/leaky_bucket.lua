-- The leaky bucket: GCRA's level as a meter in reject mode; in wait mode
-- (`shaping`) each request leaves when the requests ahead have drained, and
-- one finding `burst` units queued is refused. `p.shapes` turns it on.
ALG[4] = LEVEL
