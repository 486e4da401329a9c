-- `mlkube abort`: roll the canary back; the stable version keeps serving.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["mlkube.io/action"] = "abort@" .. os.date("!%Y-%m-%dT%XZ")
return obj
