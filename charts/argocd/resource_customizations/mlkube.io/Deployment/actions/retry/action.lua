-- `mlkube retry`: roll out again a version that was rolled back.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["mlkube.io/action"] = "retry@" .. os.date("!%Y-%m-%dT%XZ")
return obj
