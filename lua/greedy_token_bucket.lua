-- The token bucket with continuous ("greedy") refill is GCRA's bucket.
ALG[3] = LEVEL
