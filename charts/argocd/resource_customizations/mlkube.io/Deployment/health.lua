-- Argo CD health of an mlkube.io Deployment, read from the status the mlkube operator writes.
-- Argo CD's sandbox has no string or math library: only base functions and `table`.
local hs = {}

local function condition(conditionType)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message == nil or c.message == "" then
    return c.reason
  end
  return c.reason .. ": " .. c.message
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the mlkube operator"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the mlkube operator to observe generation " .. generation
  return hs
end

-- A spec the operator refused, or a route it refused on a shared gateway (RouteConflict: another
-- Deployment's route has those requests); a Ready condition from an older generation is stale.
local ready = condition("Ready")
local refused = ready ~= nil and (ready.reason == "InvalidSpec" or ready.reason == "RouteConflict")
if refused and ready.status == "False" and ready.observedGeneration == generation then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

local phase = obj.status.phase
-- Degraded: a canary rolled back (aborted, failed analysis, `mlkube rollback`) or the version the
-- spec names cannot be served; the stable version keeps serving meanwhile.
if phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = describe(condition("Degraded"), "Degraded")
  return hs
end
-- Paused: a pause step without seconds, or too many inconclusive analyses; waits for promote.
if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = describe(condition("Progressing"), "Paused")
  return hs
end
if phase == "Healthy" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Healthy")
  return hs
end

-- Pending (no servable version yet) or Progressing (pods starting, canary stepping).
hs.status = "Progressing"
if ready ~= nil and ready.status == "False" then
  hs.message = describe(ready)
else
  hs.message = describe(condition("Progressing"), "Progressing")
end
return hs
