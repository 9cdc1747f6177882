"""The model core: a workload object -> an InferenceRequest -> features -> a pod's power in W.

Read in data-path order: `quantity` (Kubernetes quantities), `kinds` (the workload kinds),
`schema` (InferenceRequest), `extract` (object -> request), `resources` (per-pod totals),
`features` (request -> vector), `prior` (physics), `knn` (learned correction), `artifact`
(the fitted Pipeline on disk), `service` (cache and reloads). The trainer imports only this
package; nothing here knows about HTTP or admission.
"""
