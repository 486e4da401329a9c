-- `mlkube promote --full`: skip the remaining canary steps and make the canary stable.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["mlkube.io/action"] = "promote-full@" .. os.date("!%Y-%m-%dT%XZ")
return obj
