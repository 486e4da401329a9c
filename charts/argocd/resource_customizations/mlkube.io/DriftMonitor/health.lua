-- Argo CD health of an mlkube.io DriftMonitor, read from the status the mlkube operator writes.
-- Health is the monitor's own (is it checking?); drift in the data is reported in the message.
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

local ready = condition("Ready")
if obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: no drift checks run"
  return hs
end

-- WaitingForDeployment: the Deployment exists but serves no version yet (it is progressing too).
-- Any other reason (DeploymentNotFound, ReferenceNotFound, InvalidSpec) needs a change to fix.
if ready == nil or (ready.status ~= "True" and ready.reason == "WaitingForDeployment") then
  hs.status = "Progressing"
  hs.message = describe(ready, "Waiting for the drift check to be scheduled")
  return hs
end
if ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

local run = obj.status.lastRun
if run == nil then
  hs.status = "Healthy"
  hs.message = describe(ready) .. "; no run yet"
  return hs
end
if run.verdict == "Error" then
  hs.status = "Degraded"
  hs.message = "Error at " .. run.at .. ": " .. (run.message or "the drift check failed")
  return hs
end
hs.status = "Healthy"
hs.message = run.verdict .. " at " .. run.at .. " (" .. (run.rows or 0) .. " rows)"
if run.verdict == "Drift" then
  hs.message = hs.message .. ": " .. table.concat(run.driftedColumns or {}, ", ") .. " drifted"
  if run.driftShare ~= nil then
    hs.message = hs.message .. ", share " .. run.driftShare
  end
end
if obj.status.lastRetrainJob ~= nil then
  hs.message = hs.message .. "; last retrain: TrainingJob " .. obj.status.lastRetrainJob
end
return hs
