-- `mlkube promote`: finish the current canary step.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["mlkube.io/action"] = "promote@" .. os.date("!%Y-%m-%dT%XZ")
return obj
