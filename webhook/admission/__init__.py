"""Admission: AdmissionReview in, AdmissionReview out.

`review` (the protocol: decode, plan, answer), `reading` (objects read once), `annotations`
(the contract written into objects), `validate` (energy budgets), `policy` (their defaults)
and `inventory` (the namespace totals budgets sum).
"""
