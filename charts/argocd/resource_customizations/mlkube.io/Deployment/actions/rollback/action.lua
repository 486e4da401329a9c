-- `mlkube rollback`: return to the previous stable version while it is still warm.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["mlkube.io/action"] = "rollback@" .. os.date("!%Y-%m-%dT%XZ")
return obj
