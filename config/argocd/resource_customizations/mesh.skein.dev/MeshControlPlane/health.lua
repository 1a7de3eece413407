-- Argo CD health of a Skein MeshControlPlane (mesh.skein.dev/v1alpha1), from the conditions
-- the operator writes (api/src/conditions.rs):
--   Degraded     Stalled=True: a refused spec (unknown version, missing namespace, ...) or a
--                failed upgrade that was rolled back; or a peer cluster that is not synced.
--   Suspended    spec.updateStrategy.paused holds a newer release back (Reconciled
--                UpgradePaused).
--   Progressing  no status yet, a generation the operator has not observed, an upgrade moving
--                (Reconciling=True), components not ready, or the object being deleted.
--   Healthy      Ready=True and nothing of the above.
-- Argo CD without this script shows the object Healthy as soon as it syncs.
local function health(status, message)
  return {status = status, message = message}
end

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  return health("Progressing", "being deleted: the operator is removing the installation")
end

local status = obj.status
if status == nil or status.conditions == nil then
  return health("Progressing", "waiting for the operator's first status")
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  return health("Progressing", "waiting for the operator to observe generation " .. tostring(generation))
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  return health("Degraded", describe(stalled))
end

local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  return health("Progressing", describe(reconciling))
end

local reconciled = condition(status, "Reconciled")
if reconciled ~= nil and reconciled.status == "True" and reconciled.reason == "UpgradePaused" then
  return health("Suspended", describe(reconciled))
end

local ready = condition(status, "Ready")
if ready == nil or ready.status ~= "True" then
  if ready ~= nil then
    return health("Progressing", describe(ready))
  end
  return health("Progressing", "waiting for the Ready condition")
end

local remotes = condition(status, "RemoteClustersSynced")
if remotes ~= nil and remotes.status == "False" then
  return health("Degraded", describe(remotes))
end

return health("Healthy", describe(ready))
