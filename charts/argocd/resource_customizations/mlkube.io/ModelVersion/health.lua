-- Argo CD health of an mlkube.io ModelVersion, read from the status the mlkube operator writes.
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

-- A spec the operator refused; a Ready condition from an older generation is stale.
local ready = condition("Ready")
if ready ~= nil and ready.status == "False" and ready.reason == "InvalidSpec" and ready.observedGeneration == generation then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

-- Invalid: the artifact failed its sha256 check and will never be served.
if obj.status.phase == "Invalid" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Invalid")
  return hs
end

-- Ready: verified. Approval is a decision, not a fault, so the message tells where it stands.
if obj.status.phase == "Ready" then
  hs.status = "Healthy"
  hs.message = describe(condition("Approved"), describe(ready, "Ready"))
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the artifact check")
return hs
