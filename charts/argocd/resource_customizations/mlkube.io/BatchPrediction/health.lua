-- Argo CD health of an mlkube.io BatchPrediction, read from the status the mlkube operator writes.
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

-- A finished run is final: the operator stops reconciling it, so a later spec edit (its
-- parallelism) never moves observedGeneration and must not read as a run in progress.
local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(condition("Succeeded"), "Succeeded")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(condition("Failed"), "Failed")
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the mlkube operator to observe generation " .. generation
  return hs
end

-- A spec the operator refused; a Ready condition from an older generation is stale.
local ready = condition("Ready")
if ready ~= nil and ready.status == "False" and ready.reason == "InvalidSpec" and ready.observedGeneration == generation then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

-- Pending (waiting for a version to score with), Planning, Running or Finalizing: the Succeeded
-- condition carries what the run is doing (shards done, rows scored).
hs.status = "Progressing"
hs.message = describe(condition("Succeeded"), "Waiting for the run to start")
return hs
