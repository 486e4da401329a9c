-- `mlkube approve`: record the decision in spec.approval, by Argo CD.
local os = require("os")
obj.spec.approval = {["approved"] = true, ["by"] = "argocd", ["at"] = os.date("!%Y-%m-%dT%XZ")}
return obj
